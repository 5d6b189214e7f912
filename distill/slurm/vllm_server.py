"""vLLM's OpenAI server, started once this process may use AMX (distill.models.hardware.request_amx_permission):
vLLM forks its CPU engine from here, and the fork inherits the permission its bf16 kernels need."""

import runpy

from distill.models.hardware import request_amx_permission

if __name__ == "__main__":
    request_amx_permission()
    runpy.run_module("vllm.entrypoints.openai.api_server", run_name="__main__", alter_sys=True)
