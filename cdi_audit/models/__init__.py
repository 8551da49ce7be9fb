"""The model layer: the noise process as data, conditions as named tensors, and the primitives on them."""
