import numpy as np, torch, os, sys, subprocess
d = "/work/scratch/s19/r3/tmp3"; os.makedirs(d, exist_ok=True)
rng = np.random.default_rng(0)
imgs = rng.integers(0, 256, size=(64, 1, 8, 8), dtype=np.uint8)
np.save(f"{d}/b.npy", imgs > 127)
np.savez(f"{d}/i.npz", x=imgs)
def cli(*a):
    r = subprocess.run([sys.executable, "-m", "flowforge", *map(str, a)], capture_output=True, text=True)
    print(">>", " ".join(map(str,a))[-90:], "rc", r.returncode); print((r.stdout[-400:] + r.stderr[-600:]).strip()[-700:])
TINY = ["--model", "glow", "--set", "model.levels_=1"]  # placeholder
