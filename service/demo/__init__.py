"""The demo: models built from scikit-learn's bundled data sets, a config, a gateway, traffic."""
