"""One module per model family: what it recognises, what it loads and the Target it builds."""
