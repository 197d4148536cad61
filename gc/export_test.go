package gc

// SetTestHookBeforeGenerations sets a function called for each profile
// after it is locked and before its generations are listed (nil: none).
func SetTestHookBeforeGenerations(f func(profile string)) { testHookBeforeGenerations = f }

// SetTestHookTrashOpened sets a function called between opening
// <store>/trash and listing it, at the start of a collection (nil: none).
func SetTestHookTrashOpened(f func()) { testHookTrashOpened = f }
