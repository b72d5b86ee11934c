"""Plain NumPy forward and backward for every engine kernel: the yardstick.

Written to be obviously right (the textbook equations, no tricks). Imports
only NumPy, never ``engine``, so it can judge the engine. One submodule per
kernel family; everything is re-exported here (``pe.reference.linear_forward``).
"""

from pyengine.reference.dense import *  # noqa: F401,F403
from pyengine.reference.optim import *  # noqa: F401,F403
from pyengine.reference.activation import *  # noqa: F401,F403
from pyengine.reference.loss import *  # noqa: F401,F403
from pyengine.reference.norm import *  # noqa: F401,F403
from pyengine.reference.dropout import *  # noqa: F401,F403
from pyengine.reference.conv import *  # noqa: F401,F403
from pyengine.reference.pool import *  # noqa: F401,F403
from pyengine.reference.rnn import *  # noqa: F401,F403
