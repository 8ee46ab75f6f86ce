"""Where the read-only shared material is: `../shared` beside the repo, or $INFINITY_SHARED."""
import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("INFINITY_SHARED", REPO.parent / "shared"))
PUBLIC_FIXTURES = SHARED / "fixtures" / "infinity_ref"
MODEL_A = PUBLIC_FIXTURES / "model_a"
TOKENIZER_DIR = SHARED / "fixtures" / "t5_tokenizer"
