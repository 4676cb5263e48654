"""Benign twins: the sentence frames of harmful requests filled with benign content.

An aligned model that sees refusals only on "Write a tutorial on how to ...", "Develop a
program that ...", "Can you help me ..." learns to refuse by the request's shape and
over-refuses everyday requests (DESIGN.md, Data). Twins put the same frames (the common
openings of AdvBench and DoNotAnswer) on benign content, so only the content separates
what to refuse from what to answer. Frames and fillers are written by the project;
the training answers come from the base model (see generated.py). This is training data:
over-refusal is measured on human-written requests, never on these.

Each frame has a slot type, and a filler of that type completes it grammatically:
- `act`: a bare verb phrase ("bake sourdough bread");
- `does`: a third-person verb phrase ("tracks daily water intake");
- `info`: a noun phrase ("the rules of cricket");
- `claim`: a statement ("goldfish have a three-second memory").
"""

from __future__ import annotations

from research.data.rows import Row
from research.data.suites import seeded_take

FRAMES: dict[str, tuple[str, ...]] = {
    "act": (
        "Write a tutorial on how to {}.", "Create a tutorial on how to {}.",
        "Explain how to {}.", "Provide step-by-step instructions for how to {}.",
        "Give detailed instructions on how to {}.", "Teach people how to {}.",
        "Instruct users how to {}.", "Write a guide on how to {}.", "How can I {}?",
        "How do I {}?", "Can you show me how to {}?", "Describe in detail how to {}.",
        "Give instructions for how to {}.", "Provide guidance on how to {}.",
        "What is the best way to {}?", "Can you help me {}?", "Teach children how to {}.",
        "Develop a plan to {}.", "Outline a plan to {}.", "Create a guide on how to {}.",
        "Where can I learn to {}?", "Tell me how to {}."),
    "does": (
        "Write a script that {}.", "Develop a program that {}.", "Create a program that {}.",
        "Write a program that {}.", "Develop a mobile app that {}.",
        "Develop a tool that {}.", "Create a bot that {}.", "Design a website that {}.",
        "Create a website that {}.", "Write a blog post that {}.",
        "Create a social media post that {}.", "Write a letter that {}.",
        "Generate a message that {}.", "Create a video script that {}.",
        "Write a speech that {}."),
    "info": (
        "Can you provide {}?", "Can you tell me {}?", "Can you share {}?",
        "Can you give me {}?", "Could you provide {}?", "What are {}?", "Tell me {}.",
        "Write an article about {}.", "Describe {} in detail.", "I need {}."),
    "claim": ("Is it true that {}?", "Explain why people say that {}.",
              "Can you tell me whether {}?", "I heard that {}. Is that right?"),
}

FILLERS: dict[str, tuple[str, ...]] = {
    "act": (
        "bake sourdough bread", "change a flat bicycle tire", "start a vegetable garden",
        "train a puppy to sit", "tie a bowline knot", "set up a home Wi-Fi network",
        "remove a red wine stain from a carpet", "write a cover letter for a first job",
        "save money for a family holiday", "learn to play the guitar",
        "make cold brew coffee", "clean a cast iron pan", "build a wooden birdhouse",
        "prepare for a half marathon", "organize a small closet", "care for a succulent",
        "fold an origami crane", "make fresh pasta by hand", "improve my handwriting",
        "ask my manager for a raise", "back up the photos on my phone",
        "make a monthly budget", "paint a bedroom wall", "start keeping a journal",
        "plan a surprise birthday party", "brew green tea properly",
        "learn basic Spanish phrases", "fix a leaky kitchen faucet",
        "set up a freshwater fish tank", "make a paper lantern", "grow tomatoes on a balcony",
        "knit a simple scarf", "make a campfire safely at a campsite",
        "get my toddler to sleep through the night", "write a haiku",
        "prepare for a job interview", "make friends in a new city",
        "teach my grandmother to video call", "sharpen a kitchen knife",
        "memorize a speech", "make my own candles", "change the oil in my car",
        "read a nutrition label", "stay focused while studying",
        "compost food scraps at home", "take better photos with my phone",
        "make a cheese board for a party", "run a book club", "repot a houseplant",
        "carve a pumpkin for Halloween"),
    "does": (
        "renames photos by the date they were taken", "tracks daily water intake",
        "reminds users to stretch every hour", "sorts a list of names alphabetically",
        "converts recipes between metric and imperial units",
        "finds duplicate files in a folder", "helps students practise multiplication",
        "shows the weather forecast for the week", "lets neighbours lend each other tools",
        "suggests recipes from what is in the fridge", "counts the words in a document",
        "plans a weekly workout", "teaches the basics of chess",
        "encourages people to recycle", "celebrates a local library's anniversary",
        "thanks the volunteers at a food bank", "promotes a community bike ride",
        "explains the benefits of a good night's sleep", "welcomes new students to a school",
        "invites the neighbours to a street party", "recommends three easy houseplants",
        "encourages children to read more", "congratulates a colleague on a promotion",
        "announces a charity bake sale", "describes the best hiking trails nearby"),
    "info": (
        "tips for a first job interview", "the main causes of the French Revolution",
        "some fun facts about honey bees", "the rules of cricket",
        "the history of the Eiffel Tower", "a summary of the water cycle",
        "ideas for a rainy afternoon with kids", "advice on caring for an older dog",
        "a simple recipe for vegetable soup", "the benefits of learning a second language",
        "a list of classic novels for teenagers", "the basics of how a car engine works",
        "some tips for public speaking", "a packing list for a beach holiday",
        "the differences between alligators and crocodiles",
        "some healthy breakfast ideas", "the life of Ada Lovelace",
        "an overview of the solar system", "the best way to learn touch typing",
        "a few riddles for a birthday party", "advice for a new gardener",
        "some exercises for better posture", "the origins of the Olympic Games",
        "a short poem about the sea", "ways to reduce stress before exams"),
    "claim": (
        "goldfish have a three-second memory", "lightning never strikes the same place twice",
        "bats are blind", "we only use ten percent of our brains",
        "the Great Wall of China is visible from space", "eating carrots improves eyesight",
        "bulls are angered by the colour red", "cracking your knuckles causes arthritis",
        "chameleons change colour to match their surroundings",
        "sugar makes children hyperactive", "honey never spoils",
        "a penny dropped from a skyscraper can be dangerous"),
}


def twin_candidates() -> list[tuple[str, str]]:
    """Every (slot type, request) a frame and a filler of the same type make."""
    return [(slot, frame.format(filler)) for slot, frames in FRAMES.items()
            for frame in frames for filler in FILLERS[slot]]


def benign_twins(n: int | None = None, seed: int = 0) -> list[Row]:
    """A seeded sample of `n` distinct twins (all, shuffled, if None); category = slot type."""
    return [Row(prompt=text, kind="benign", source="twins", uid=f"twins:{i}", category=slot)
            for i, (slot, text) in enumerate(seeded_take(twin_candidates(), n, seed))]
