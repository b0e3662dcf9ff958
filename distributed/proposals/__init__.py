"""The proposal room: region proposals for every frame of a shard set, computed once and stored beside the shards."""
