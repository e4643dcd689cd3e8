"""``python -m fpn.models``: parameter counts of every registered model and the FPN family."""

from __future__ import annotations

from fpn.models import create_model, list_models

FPN_FAMILY: tuple[tuple[str, dict], ...] = (
    ("reference", {}),
    ('reduction="max"', {"reduction": "max"}),
    ('reduction="attention"', {"reduction": "attention"}),
    ("depth_kernel=5", {"depth_kernel": 5}),
    ("depth_convs_offset=-1", {"depth_convs_offset": -1}),
    ("depth_convs_offset=+1", {"depth_convs_offset": 1}),
    ('upsample="transpose"', {"upsample": "transpose"}),
    ("width=0.5", {"width": 0.5}),
    ('norm="group"', {"norm": "group"}),
)


def main() -> None:
    """Print two Markdown tables: models at defaults, then FPN variants."""
    print("| model | parameters | min_depth | max_depth |\n|---|---:|---:|---:|")
    for name in list_models():
        model = create_model(name)
        count = sum(p.numel() for p in model.parameters())
        print(f"| {name} | {count:,} | {model.min_depth} | {model.max_depth} |")
    print("\n| FPN variant | parameters | min_depth |\n|---|---:|---:|")
    for label, kwargs in FPN_FAMILY:
        model = create_model("fpn", **kwargs)
        print(f"| {label} | {sum(p.numel() for p in model.parameters()):,} | {model.min_depth} |")


if __name__ == "__main__":
    main()
