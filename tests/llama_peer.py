"""llama-cpp-python's own OpenAI-compatible server, the tests' real peer, with the weights loaded
as voxloop loads them: a build with AMX kernels dies with SIGILL on these VMs unless the model is
loaded without AMX weight repacking (see voxloop.backends.llm.llama.no_amx_repacking)."""

import runpy

from voxloop.backends.llm.llama import no_amx_repacking

if __name__ == "__main__":
    with no_amx_repacking():
        runpy.run_module("llama_cpp.server", run_name="__main__", alter_sys=True)
