"""Expert prediction, prefetch planning, cache replacement and CPU/GPU placement policies.

One policy object runs unchanged in the simulator (``sim``) and the real executor (``hw``); this
package therefore never imports either of them. Built in the policy issue.
"""
