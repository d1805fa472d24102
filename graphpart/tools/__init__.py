"""Users' commands built on the library: benchmarks and the memory profiler."""
