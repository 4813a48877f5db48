"""LoRA adapter files, read and written beside the other weight formats, so the engine (serving adapters) and the
trainer (writing them) share one reader and neither depends on the other.

    targets.py   PEFT target-module names -> hearth's projections, LoraConfig, the shapes a model needs
    peft.py      PEFT adapter directories (adapter_config.json + adapter_model.safetensors), both ways
    gguf.py      llama.cpp GGUF adapter files, both ways
"""
