"""The owner's images and what comes with them: find, validate, hash, decode, preprocess; captions and labels; image statistics; shards."""
