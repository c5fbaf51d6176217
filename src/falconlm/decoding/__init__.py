"""The decoding core: settings, token picking, detokenizing with stop strings, prefill and decode steps, the batching engine.

Every caller that generates text (`generate`, `chat`, `serve`, the lm-eval adapter) goes through
this package, so each rule is decided once. (It is not called `generate`, so that the function
`falconlm.generate` is never shadowed by a subpackage of that name.)
"""
