"""Model layer: the NNX decoder, LoRA, checkpoint import/export, generation."""

from research.models.config import ModelConfig
from research.models.loading import load_pretrained
from research.models.lora import LoRAConfig, LoRAParam
from research.models.transformer import Decoder, DecoderOutput, KVCache, init_decoder, unstack_layers

__all__ = ["Decoder", "DecoderOutput", "KVCache", "LoRAConfig", "LoRAParam", "ModelConfig",
           "init_decoder", "load_pretrained", "unstack_layers"]
