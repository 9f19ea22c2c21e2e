"""No host syncs in the training step: the host reads no value computed on the device but one.

On a GPU every read of a tensor's values by the host (`.item()`, `.tolist()`, `nonzero()`, a
Python `if` on a tensor, ...) waits until the device has caught up, and a step that does it per
layer or per micro batch leaves the GPU idle between kernels. The CPU cannot tell host tensors
from device ones, so the trainer runs here (2 real processes, ZeRO-2 or M3's engine, 2 micro
batches per step) with every such read counted by call site, and the project's sites must be:
  - `train.py:train_step`, once per step: whether any rank's loss was not finite decides whether
    the optimizer steps, and the losses come back in the same read (Megatron and DeepSpeed read
    their found-inf flag once per step the same way);
  - reads of the host batch before it is copied: the data loader assembling it
    (`loader.py:__iter__`, torch's DataLoader underneath), its document layout
    (`documents.py:from_tokens`) and its data digest (`train.py:_sample_digest`).
Nothing in the model, the Titans ops or the optimizers reads, and nothing reads per micro batch.
Library sites are printed for the record: DeepSpeed's ZeRO-1/2 reads its gradient norm once per
parameter group at the optimizer step (`deepspeed:is_invalid_grad_norm`).
"""

import json

import pytest

from train_launch import run_probe

HOST_BATCH_SITES = {"hope_mega/data/loader.py:__iter__", "hope_mega/model/documents.py:from_tokens",
                    "hope_mega/train.py:_sample_digest"}
DECISION = "hope_mega/train.py:train_step"
STEPS = 3
VARIANTS = {"adamw-zero2": (), "m3-mlp-memory": ("train.optimizer=m3", "m3.eps=1e-4", "model.memory=mlp")}


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_the_step_reads_the_device_once(tiny_data, tmp_path, name):
    run_probe(2, "host_reads", tiny_data, tmp_path / "run", f"train.steps={STEPS}", *VARIANTS[name])
    reports = [json.loads((tmp_path / "run" / f"host_reads.rank{r}.json").read_text()) for r in (0, 1)]
    for report in reports:
        assert report["steps"] == STEPS
        sites = report["sites"]
        ours = {site: n for site, n in sites.items() if site.startswith("hope_mega/")}
        print(f"{name} rank {report['rank']}: {sites}")
        assert ours.pop(DECISION, 0) == STEPS, sites
        unexpected = {site: n for site, n in ours.items() if site not in HOST_BATCH_SITES}
        assert not unexpected, f"host reads inside the training step: {unexpected}"
