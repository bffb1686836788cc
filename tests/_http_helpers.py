"""A file server on 127.0.0.1 for the download tests: serves bytes the test puts in ``files``, answers Range
requests with 206, logs every request, and can cut a connection half-way (``cut``: path -> times)."""
from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class FileServer:
    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.cut: dict[str, int] = {}  # path -> how many more requests of it are cut after half the body
        self.requests: list[tuple[str, str | None]] = []  # (path, Range header)
        self.delay = 0.0  # seconds before each answer (so that concurrent clients overlap)
        self.lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_GET(self):  # noqa: N802 - http.server's name
                path = self.path.split("?", 1)[0]
                rng = self.headers.get("Range")
                with owner.lock:
                    owner.requests.append((path, rng))
                    cut = owner.cut.get(path, 0)
                    if cut:
                        owner.cut[path] = cut - 1
                time.sleep(owner.delay)
                body = owner.files.get(path)
                if body is None:
                    self.send_error(404, "Not Found")
                    return
                start = int(rng.split("=", 1)[1].split("-", 1)[0]) if rng else 0
                if start >= len(body) and start:
                    self.send_error(416, "Range Not Satisfiable")
                    return
                part = body[start:]
                self.send_response(206 if rng else 200)
                self.send_header("Content-Length", str(len(part)))
                if rng:
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                self.end_headers()
                if cut:
                    self.wfile.write(part[: len(part) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(part)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> "FileServer":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def count(self, path: str) -> int:
        with self.lock:
            return sum(1 for p, _ in self.requests if p == path)


def msra_blobs(depth: int = 50, *, seed: int = 0, num_classes: int = 10):
    """Blobs in Detectron's ``R-<depth>.pkl`` layout (Caffe2 names, BN folded into ``_bn_s``/``_bn_b``), float16
    to keep the file small, He-scaled so that a network built from them gives finite activations (the last BN
    scale of each block is small, so the residual sums stay bounded through 50 layers)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    blobs = {}

    def conv(name, shape):
        fan_in = int(np.prod(shape[1:]))
        blobs[name] = (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float16)

    def bn(prefix, n, scale=1.0):
        blobs[prefix + "_bn_s"] = np.full((n,), scale, np.float16)
        blobs[prefix + "_bn_b"] = np.zeros((n,), np.float16)

    conv("conv1_w", (64, 3, 7, 7))
    bn("res_conv1", 64, 1.0 / 255)  # the MSRA input is 0-255
    blocks = {18: (2, 2, 2, 2), 50: (3, 4, 6, 3)}[depth]
    in_ch = 64
    for s, n in enumerate(blocks):
        planes = 64 * 2 ** s
        out = planes * 4 if depth >= 50 else planes
        for i in range(n):
            p = f"res{s + 2}_{i}"
            if depth >= 50:
                conv(p + "_branch2a_w", (planes, in_ch, 1, 1))
                bn(p + "_branch2a", planes)
                conv(p + "_branch2b_w", (planes, planes, 3, 3))
                bn(p + "_branch2b", planes)
                conv(p + "_branch2c_w", (out, planes, 1, 1))
                bn(p + "_branch2c", out, 0.2)
            else:
                conv(p + "_branch2a_w", (planes, in_ch, 3, 3))
                bn(p + "_branch2a", planes)
                conv(p + "_branch2b_w", (out, planes, 3, 3))
                bn(p + "_branch2b", out, 0.2)
            if i == 0 and (in_ch != out or s > 0):
                conv(p + "_branch1_w", (out, in_ch, 1, 1))
                bn(p + "_branch1", out)
            in_ch = out
    blobs["pred_w"] = (rng.standard_normal((num_classes, in_ch)) * 0.01).astype(np.float16)
    blobs["pred_b"] = np.zeros((num_classes,), np.float16)
    return blobs


def msra_pkl_bytes(depth: int = 50) -> bytes:
    """A Detectron-style pkl (``{"blobs": ...}``, protocol 2 as Detectron's Python 2 files) as bytes."""
    import pickle

    return pickle.dumps({"blobs": msra_blobs(depth)}, protocol=2)
