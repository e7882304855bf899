"""Errors raised while mapping Hugging Face checkpoints and folders."""


class WeightMapError(ValueError):
    """Checkpoint tensors that do not fit the model: each missing, unexpected or misshapen name is listed."""

    def __init__(self, source: str, missing=(), unexpected=(), misshapen=()):
        self.missing, self.unexpected, self.misshapen = list(missing), list(unexpected), list(misshapen)
        lines = [f"{source}: checkpoint does not match the model"]
        if self.missing:
            lines.append(f"  missing tensors ({len(self.missing)}): " + ", ".join(self.missing))
        if self.unexpected:
            lines.append(f"  unexpected tensors ({len(self.unexpected)}): " + ", ".join(self.unexpected))
        for name, got, want in self.misshapen:
            lines.append(f"  wrong shape for {name}: got {tuple(got)}, expected {tuple(want)}")
        super().__init__("\n".join(lines))


class HFFolderError(ValueError):
    """A Hugging Face / sentence-transformers folder that cannot be read (names the file)."""
