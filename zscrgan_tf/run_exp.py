"""`python -m zscrgan_tf.run_exp`: the ZSCRGAN entry point under the release's name (see zscrgan_tf.train)."""

from zscrgan_tf.train import cli

if __name__ == "__main__":
    cli()
