"""The arms of ``open-clip-lightclip bench train``: trainer flags and model settings (no torch: ``--help`` reads them)."""
from typing import Dict, List

__all__ = ["ARMS", "MODEL_SETTINGS"]

# arm name -> trainer flags
ARMS: Dict[str, List[str]] = {
    "clip": ["--loss", "clip"],
    "siglip": ["--loss", "siglip"],
    "lightclip instance": ["--loss", "lightclip", "--lightclip-token-weight", "0", "--lightclip-mlm-weight", "0"],
    "lightclip token": ["--loss", "lightclip", "--lightclip-instance-weight", "0", "--lightclip-mlm-weight", "0",
                        "--lightclip-token-weight", "1"],
    "lightclip token k=8": ["--loss", "lightclip", "--lightclip-instance-weight", "0", "--lightclip-mlm-weight", "0",
                            "--lightclip-token-weight", "1", "--lightclip-token-negatives", "8"],
    "lightclip mlm": ["--loss", "lightclip", "--lightclip-instance-weight", "0", "--lightclip-token-weight", "0",
                      "--lightclip-mlm-weight", "0.5"],
    "lightclip all": ["--loss", "lightclip", "--lightclip-token-weight", "1", "--lightclip-mlm-weight", "0.5"],
    "cliplite": ["--loss", "cliplite"],
    "clip untrimmed": ["--loss", "clip"],
}
# attributes set on an arm's model after it is built
MODEL_SETTINGS: Dict[str, dict] = {
    # the text tower on all context_length positions: the step upstream OpenCLIP's CLIP runs
    "clip untrimmed": {"trim_text": False},
}
