"""The demo ward (not shipped in the image): a synthetic hospital ward capture and its policy,
frame builders for tests and benchmarks, a fleet load generator, and `wardtap demo`.

Imports: appliance and fastpath; the product never imports it (but `wardtap demo`, which
says so when it is missing).
"""
