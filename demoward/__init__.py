"""The demo ward (not shipped in the image): a synthetic hospital ward capture and its policy,
frame builders for tests and benchmarks, a fleet load generator, and `wardtap demo`.

Imports: any part of the product (appliance.*) but its command line, and fastpath. The
product never imports it (but `wardtap demo`, which says so when it is missing).
"""
