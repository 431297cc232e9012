# Peer for bench/expert-ffn.ts: the same expert FFN, y = GELU_tanh(x·W1 + b1)·W2 + b2, in PyTorch
# (Debian python3-torch with OpenBLAS), forward and forward+backward, at a given thread count.
# Prints one JSON line. Usage: python3 bench/expert_ffn_peer.py THREADS T D H MIN_SECONDS
import json, os, sys, time
import torch

threads, T, D, H = (int(a) for a in sys.argv[1:5])
min_s = float(sys.argv[5]) if len(sys.argv) > 5 else 1.0
torch.set_num_threads(threads)
torch.manual_seed(0)
x = torch.randn(T, D, requires_grad=True)
w1 = (torch.randn(D, H) * 0.02).requires_grad_()
b1 = torch.zeros(H, requires_grad=True)
w2 = (torch.randn(H, D) * 0.02).requires_grad_()
b2 = torch.zeros(D, requires_grad=True)
dy = torch.randn(T, D)
gelu = torch.nn.GELU(approximate="tanh")


def fwd():
    with torch.no_grad():
        return gelu(x @ w1 + b1) @ w2 + b2


def fwdbwd():
    for p in (x, w1, b1, w2, b2):
        p.grad = None
    y = gelu(x @ w1 + b1) @ w2 + b2
    y.backward(dy)


def median_ms(fn):
    fn()
    samples = []
    start = time.perf_counter()
    while time.perf_counter() - start < min_s or len(samples) < 5:
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1000)
    samples.sort()
    return samples[len(samples) // 2]


blas = [l.strip() for l in torch.__config__.show().splitlines() if "BLAS" in l]
print(json.dumps({
    "torch": torch.__version__,
    "threads": torch.get_num_threads(),
    "blas": blas,
    "libblas": os.path.realpath("/usr/lib/x86_64-linux-gnu/libblas.so.3"),
    "openblas_coretype": os.environ.get("OPENBLAS_CORETYPE", "(unset)"),
    "fwd_ms": median_ms(fwd),
    "fwdbwd_ms": median_ms(fwdbwd),
}))
