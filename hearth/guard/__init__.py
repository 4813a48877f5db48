"""hearth's guard: a Llama Guard-format safety classifier (taxonomy, prompt, policy, scoring, data, training, eval).

Data flows one way: taxonomy -> policy -> prompt -> classifier (scores with any engine) -> evaluate; sources ->
mapping -> dataset -> hearth.tune (training). The server's input/output checks live in hearth.server.guarding.
"""
