package gc

// SetTestHookBeforeGenerations sets a function called for each profile
// after it is locked and before its generations are listed (nil: none).
func SetTestHookBeforeGenerations(f func(profile string)) { testHookBeforeGenerations = f }
