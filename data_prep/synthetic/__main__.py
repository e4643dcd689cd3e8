"""``python -m data_prep.synthetic`` = ``python -m data_prep synth``."""

from data_prep.synthetic.cli import synth_main

raise SystemExit(synth_main())
