"""End to end: what a user meets across modules (the command line, workflows, bad input, the demo,
the README example, CHIP on the real MobileNetV2)."""
