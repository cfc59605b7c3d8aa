"""Real tasks for NFNs built from generated layers: model zoos made from the digits images that
scikit-learn ships, training NFNs and baselines on them, the robustness experiment, and
multi-process training. Needs the ``tasks`` extra (scikit-learn, tqdm, matplotlib, nfn)."""
