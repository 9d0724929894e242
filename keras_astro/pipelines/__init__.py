"""tf.data builders: arrays/files → shuffled, batched, cached, prefetched datasets."""
