import sys
from pathlib import Path

# makes xwam_dataset_testutils (synthetic episodes) importable from the tests in this folder
sys.path.insert(0, str(Path(__file__).parent))
