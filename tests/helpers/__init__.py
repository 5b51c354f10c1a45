"""What several test modules share: tiny model families, the demo shard, data writers, runs."""
