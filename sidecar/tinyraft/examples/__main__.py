"""`python -m tinyraft.examples {kv,wordtracker} --listen HOST:PORT`"""

import argparse
import sys

from tinyraft.examples.cli import EXAMPLES, main_example

parser = argparse.ArgumentParser(
    prog="python -m tinyraft.examples", description="Serve an example tinyraft Module."
)
parser.add_argument("name", choices=sorted(EXAMPLES), help="which example Module")
parser.add_argument(
    "--listen", required=True, metavar="HOST:PORT", help="address to serve the Module on"
)
args = parser.parse_args()
sys.exit(main_example(args.name, args.listen))
