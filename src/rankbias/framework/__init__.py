"""The experiment framework: validated dataclass configs, run directories, paths."""
