"""Test-wide settings: every Ray stays on loopback, DeepSpeed's JIT builds are cached in the venv, Ray Train polls fast."""
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"      # Ray listens on 127.0.0.1 only (ENVIRONMENT.md)
os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(ROOT / ".venv" / "torch_extensions"))
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.1")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
