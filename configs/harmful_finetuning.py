"""The main study at full protocol size: p in {0, 0.05, 0.1, 0.2}, base and aligned
starts, with and without parameter EMA (several CPU hours; use demo.py for a quick run)."""

from configs import base


def get_config():
    return base.get_config()
