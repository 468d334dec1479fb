"""llama.cpp's own ``llama-server`` (through ``xllamacpp``, which runs its C++ HTTP server in this
process) on the embedded 0.5B model: the tests' real peer for what only llama-server does, such
as continuing a trailing assistant message. xllamacpp's CPU wheel is built without native flags,
so it has no AMX kernels to avoid (see tests/llama_peer.py).

    python tests/llama_server_peer.py PORT [--parallel N]
"""

import argparse
import threading

import xllamacpp

from voxloop.config import Settings
from voxloop.models import QWEN_05B

if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("port", type=int)
    parser.add_argument("--parallel", type=int, default=2, help="slots: sequences decoded together")
    args = parser.parse_args()
    params = xllamacpp.CommonParams()
    params.model.path = str(QWEN_05B.assemble(Settings().cache_dir))
    params.n_ctx = 2048
    params.n_parallel = args.parallel
    params.cpuparams.n_threads = 1
    params.cpuparams_batch.n_threads = 1
    params.hostnames = ["127.0.0.1"]
    params.port = args.port
    server = xllamacpp.Server(params)  # serves HTTP on its own threads until the process ends
    threading.Event().wait()
