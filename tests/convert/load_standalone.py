"""Run as a script in a fresh interpreter: load exported folders with transformers alone.

Usage: python -I load_standalone.py IDS_PT OUT_PT HF_DIR [HF_DIR ...]

Any import route to hope_mega (an editable install's finder included) is removed first and the
script proves it is gone, so the folders are shown to stand alone. Writes one logits tensor per
folder to OUT_PT.
"""

import importlib.util
import sys



def _from_editable_install(obj) -> bool:
    owner = obj if isinstance(obj, type) else getattr(obj, "__self__", type(obj))
    return "__editable__" in getattr(owner, "__module__", "")


sys.meta_path[:] = [f for f in sys.meta_path if not _from_editable_install(f)]
sys.path_hooks[:] = [h for h in sys.path_hooks if not _from_editable_install(h)]
sys.path[:] = [p for p in sys.path if "__editable__" not in p]
sys.path_importer_cache.clear()
assert importlib.util.find_spec("hope_mega") is None, "hope_mega is still importable"

import torch  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402

ids_path, out_path, *dirs = sys.argv[1:]
ids = torch.load(ids_path)
logits, files = [], []
for d in dirs:
    model = AutoModelForCausalLM.from_pretrained(d, trust_remote_code=True).eval()
    files.append(sys.modules[type(model).__module__].__file__)
    with torch.no_grad():
        logits.append(model(ids).logits)
loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("hope_mega", "fla"))
torch.save({"logits": logits, "files": files, "loaded": loaded}, out_path)
