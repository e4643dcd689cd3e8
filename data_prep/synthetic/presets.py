"""placeholder"""
DEFAULT_PRESET = "easy"
PRESETS = {}
class PhantomPreset: pass
