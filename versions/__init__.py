"""The four stages of the seed, one folder each; they never import each other."""
