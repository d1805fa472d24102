"""Planning, pure and cheap: micro-batching, balance, partition, schedules, memory, costs."""
