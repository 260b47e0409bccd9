"""A process that used OpenCV (the synthetic generator, saliency, resizing) must still be able
to fork DataLoader workers: with OpenCV's thread pool started, the children deadlocked."""

import subprocess
import sys

SCRIPT = """
import cv2, numpy as np, torch
import wsss  # noqa: F401  (keeps OpenCV sequential)
from wsss.cam.data import worker_init
img = np.random.default_rng(0).random((256, 256, 3)).astype(np.float32)
for _ in range(10):
    cv2.resize(img, (300, 300), interpolation=cv2.INTER_CUBIC)
class D(torch.utils.data.Dataset):
    def __len__(self): return 4
    def __getitem__(self, i): return torch.from_numpy(cv2.resize(img, (64, 64)))
loader = torch.utils.data.DataLoader(D(), batch_size=2, num_workers=2, worker_init_fn=worker_init)
print(sum(int(b.shape[0]) for b in loader))
"""


def test_dataloader_workers_fork_after_opencv_use():
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "4"
