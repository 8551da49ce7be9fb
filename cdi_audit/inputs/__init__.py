"""The owner's images and what comes with them: find, validate, hash, decode and preprocess them; their
captions and labels; image statistics; shards."""
