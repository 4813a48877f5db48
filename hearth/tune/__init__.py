"""Customize a model: LoRA / QLoRA / full fine-tuning, DPO and distillation with one explicit training loop.

    lora.py      LoRALinear and the module swap onto hearth's Transformer (PEFT/HF target names)
    quant.py     NF4 4-bit frozen linear (QLoRA's base), dequantized on the fly
    peft_io.py   a model's adapter to and from PEFT files (the formats themselves: hearth/weights/adapters/)
    data.py      JSONL → token ids + loss masks (chat template, assistant spans), packing, batches
    forward.py   the training forward (packed documents, gradient checkpointing) and the losses
    train.py     the loop: AdamW, accumulation, cosine schedule, clipping, validation, checkpoints, resume
    report.py    progress bar, JSON log, loss-curve PNG; memory.py: the pre-flight memory estimate
"""
