"""graphpart: train neural networks across devices by partitioning their computational graph."""
