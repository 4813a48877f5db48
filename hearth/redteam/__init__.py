"""Red-teaming a model: attack suites, refusal detection and judge-human agreement."""
