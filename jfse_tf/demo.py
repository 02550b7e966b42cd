"""`python -m jfse_tf.demo`: the JFSE / CFSA entry point under the release's name (see jfse_tf.train)."""

from jfse_tf.train import cli

if __name__ == "__main__":
    cli()
