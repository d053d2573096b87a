import sys
from pathlib import Path

# the rule tests share tests/rules/rule_kit.py (graph builders and the find_sites / convert calls)
sys.path.insert(0, str(Path(__file__).resolve().parent))
