//! loadgen's one integration-test binary. Each module is one area:
