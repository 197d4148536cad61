package roots

// SetWalkLimits sets the walk's limits (maxWalkDepth, maxWalkEntries)
// for a test; restore puts the defaults back.
func SetWalkLimits(depth, entries int) (restore func()) {
	d, e := maxWalkDepth, maxWalkEntries
	maxWalkDepth, maxWalkEntries = depth, entries
	return func() { maxWalkDepth, maxWalkEntries = d, e }
}

// MaxWalkDepth is maxWalkDepth.
func MaxWalkDepth() int { return maxWalkDepth }
