"""Break LPT on purpose, one mutation at a time, and name the test that catches each.

    python scripts/mutate_lpt.py          # every mutation (about 10 min on 2 cores)
    python scripts/mutate_lpt.py 3 9      # only mutations 3 and 9

Each mutation edits one source line, runs the tests that should catch it (-x) and restores the
file, whatever happens. Exit status 1 when a mutation survives (its tests pass).
"""
import os
import subprocess
import sys
from pathlib import Path

os.chdir(Path(__file__).resolve().parents[1])
M = [
 ("matching loss removed", "ltbench/methods/lpt.py", "return self.cfg.match_weight * self._match", "return None", "tests/test_lpt.py"),
 ("matching loss dropped by the trainer", "ltbench/training/trainer.py", "total = total + w * (loss + extra[part].float().mean())", "total = total + w * loss", "tests/test_lpt.py"),
 ("beta fixed at 1", "ltbench/methods/lpt.py", "weight=lambda e, E: eta * max(0.0, 1.0 - e / E))", "weight=1.0)", "tests/test_lpt.py"),
 ("beta stepped per batch (continuous)", "ltbench/training/trainer.py", "weights = [p.weight_at(epoch, phase_epochs(meter, epoch, steps_per_epoch)) for p in parts]", "weights = [p.weight_at(meter.fraction * phase_epochs(meter, epoch, steps_per_epoch), phase_epochs(meter, epoch, steps_per_epoch)) for p in parts]", "tests/test_prompts.py::test_phase2_trains_pool_keys_head_not_shared"),
 ("lambda- = 0 (LPT config)", "ltbench/methods/lpt.py", "    gamma_neg: float = 4.0\n", "    gamma_neg: float = 0.0\n", "tests/test_lpt.py"),
 ("lambda- = 0 (A-GCL default)", "ltbench/losses.py", "gamma_neg: float = 4.0,", "gamma_neg: float = 0.0,", "tests/test_losses.py"),
 ("A-GCL off-target terms only via smoothing (old reading)", "ltbench/losses.py", "neg_weight: float = 1.0):", "neg_weight: float = 0.0):", "tests/test_losses.py"),
 ("GCL noise per sample", "ltbench/losses.py", "eps = (torch.randn(tuple(logits.shape)) / 3.0)", "eps = (torch.randn(logits.shape[0], 1) / 3.0)", "tests/test_losses.py"),
 ("Mixup off (LPT config)", "ltbench/methods/lpt.py", "mixup: float = 1.0", "mixup: float = 0.0", "tests/test_lpt.py"),
 ("Mixup off (trainer)", "ltbench/training/trainer.py", "    if mixup > 0:\n        x, mix", "    if False:\n        x, mix", "tests/test_lpt.py"),
 ("dropout off (config)", "ltbench/methods/lpt.py", "dropout: float = 0.1", "dropout: float = 0.0", "tests/test_lpt.py"),
 ("dropout off (forward)", "ltbench/methods/lpt.py", "return self.head(self.dropout(self.query(images)[0]))", "return self.head(self.query(images)[0])", "tests/test_lpt.py"),
 ("top-k = 1", "ltbench/methods/lpt.py", "top_k: int = 2", "top_k: int = 1", "tests/test_lpt.py"),
 ("keys frozen", "ltbench/methods/lpt.py", "[self.pool, self.keys, *head]", "[self.pool, *head]", "tests/test_lpt.py"),
 ("block K off by one", "ltbench/methods/lpt.py", "self.K = L - self.group_layers", "self.K = L - self.group_layers + 1", "tests/test_lpt.py"),
 ("instance half's loss options swapped", "ltbench/methods/lpt.py", 'parts = [PartSpec("class", loss_kwargs=self.loss_kwargs()),\n                     PartSpec("instance", loss_kwargs=self.loss_kwargs(instance=True),', 'parts = [PartSpec("class", loss_kwargs=self.loss_kwargs(instance=True)),\n                     PartSpec("instance", loss_kwargs=self.loss_kwargs(),', "tests/test_lpt.py"),
 ("one mean over both parts", "ltbench/training/trainer.py", "    size = len(y) // len(losses)\n", "    size = len(y) // len(losses)\n    losses, weights = losses[:1], [1.0]; size = len(y)\n", "tests/test_lpt.py"),
]
only = sys.argv[1:]
survived = []
for i, (name, f, old, new, tests) in enumerate(M):
    if only and str(i) not in only:
        continue
    text = Path(f).read_text()
    assert text.count(old) == 1, f"mutation {i} ({name}): the line to break is no longer in {f}"
    Path(f).write_text(text.replace(old, new))
    try:
        r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", tests],
                           env={**os.environ, "PYTHONPATH": os.getcwd()}, capture_output=True, text=True)
        failed = [ln.split(" - ")[0] for ln in r.stdout.splitlines() if ln.startswith(("FAILED", "ERROR"))]
        print(f"[{i}] {name}: " + (f"caught by {failed[0]}" if r.returncode else "SURVIVED"), flush=True)
        if not r.returncode:
            survived.append(name)
    finally:
        Path(f).write_text(text)
sys.exit(1 if survived else 0)
