"""Code generation: plans become template views, Jinja renders PyTorch modules, files are written safely."""
