#Requires -Version 7.0
# Get-BastionSession -History (issue 13): the sessions Systems Manager recorded, from ssm:DescribeSessions, against the
# sandbox (which records every session: owner ARN, target, document, reason, start, end, status).
BeforeAll {
    Import-Module (Join-Path $PSScriptRoot 'TestHelpers.psm1') -Force
    Import-Module (Get-TestModulePath) -Force
    $script:Sandbox = Start-TestSandbox
    $script:Aws = $Sandbox.Aws
    $script:Bastion = 'i-0a1b2c3d4e5f60001'
    $script:Owner = "arn:aws:iam::$($Sandbox.accountId):user/sandbox-user"

    function Wait-Until([scriptblock] $Condition, [int] $Seconds = 60, [string] $What = 'the condition') {
        $deadline = [DateTime]::UtcNow.AddSeconds($Seconds)
        while (-not (& $Condition)) {
            if ([DateTime]::UtcNow -gt $deadline) { throw "Timed out after $Seconds s waiting for $What." }
            Start-Sleep -Milliseconds 100
        }
    }

    # One ended session with a reason, and one still open.
    $script:Before = Get-Date
    $ended = Start-BastionSession -Target $Bastion -PortNumber 5432 -Reason 'OPS-42 schema check' @Aws
    $script:EndedId = $ended.SessionId
    $ended | Stop-BastionSession
    $script:Live = Start-BastionSession -Target $Bastion -PortNumber 22 @Aws
    Wait-Until { @(Get-BastionSession -History -SessionId $EndedId @Aws -ErrorAction SilentlyContinue).Count -eq 1 } -What 'the stopped session in the history'
}

AfterAll {
    Get-BastionSession | Stop-BastionSession -ErrorAction SilentlyContinue
    Stop-TestSandbox $Sandbox
}

Describe 'Get-BastionSession -History' {
    It 'lists an ended session with its owner, target, document, reason, status and times' {
        $h = @(Get-BastionSession -History @Aws)
        $h.SessionId | Should -Contain $EndedId
        $h.SessionId | Should -Not -Contain $Live.SessionId
        $r = $h | Where-Object SessionId -eq $EndedId
        $r | Should -BeOfType BastionTools.BastionSessionHistory
        $r.Owner | Should -Be $Owner
        $r.Target | Should -Be $Bastion
        $r.DocumentName | Should -Be 'AWS-StartPortForwardingSession'
        $r.Reason | Should -Be 'OPS-42 schema check'
        $r.Status | Should -Be 'Terminated'
        $r.StartTime | Should -BeGreaterOrEqual $Before.AddSeconds(-1)
        $r.EndTime | Should -BeGreaterOrEqual $r.StartTime
        $r.Duration | Should -Be ($r.EndTime - $r.StartTime)
    }

    It 'lists the open sessions with -Active' {
        $a = @(Get-BastionSession -History -Active @Aws)
        $a.SessionId | Should -Contain $Live.SessionId
        $a.SessionId | Should -Not -Contain $EndedId
        ($a | Where-Object SessionId -eq $Live.SessionId).EndTime | Should -BeNullOrEmpty
    }

    It 'filters by target, owner, status, start time and id, and -First limits' {
        @(Get-BastionSession -History -Target $Bastion @Aws).SessionId | Should -Contain $EndedId
        @(Get-BastionSession -History -Target 'i-0a1b2c3d4e5f60002' @Aws) | Should -BeNullOrEmpty
        @(Get-BastionSession -History -Owner $Owner -Status Terminated @Aws).SessionId | Should -Contain $EndedId
        @(Get-BastionSession -History -Owner 'arn:aws:iam::123456789012:user/nobody' @Aws) | Should -BeNullOrEmpty
        @(Get-BastionSession -History -Status Failed @Aws) | Should -BeNullOrEmpty
        @(Get-BastionSession -History -After $Before.AddMinutes(-1) -Before (Get-Date).AddMinutes(1) @Aws).SessionId | Should -Contain $EndedId
        @(Get-BastionSession -History -After (Get-Date).AddHours(1) @Aws) | Should -BeNullOrEmpty
        @(Get-BastionSession -History -Before $Before.AddMinutes(-1) @Aws) | Should -BeNullOrEmpty
        @(Get-BastionSession -History -SessionId "$($EndedId.Substring(0, 8))*" @Aws).SessionId | Should -Be @($EndedId)
        @(Get-BastionSession -History -First 1 @Aws).Count | Should -Be 1
    }

    It 'takes the target from Get-BastionInstance on the pipeline' {
        @(Get-BastionInstance -InstanceId $Bastion @Aws | Get-BastionSession -History @Aws).SessionId | Should -Contain $EndedId
    }

    It 'says so for an id it does not list, and for -After not before -Before' {
        $e = $null
        Get-BastionSession -History -SessionId 'sandbox-user-0000000000000000' @Aws -ErrorVariable e -ErrorAction SilentlyContinue
        $e[0].FullyQualifiedErrorId | Should -BeLike 'BastionSessionNotFound,*'
        $e = $null
        $now = Get-Date
        Get-BastionSession -History -After $now -Before $now.AddHours(-1) @Aws -ErrorVariable e -ErrorAction SilentlyContinue
        $e[0].FullyQualifiedErrorId | Should -BeLike 'SessionHistoryFilterInvalid,*'
        $e[0].CategoryInfo.Category | Should -Be 'InvalidArgument'
    }

    It 'shows a table view with the duration and the owner''s name' {
        $text = Get-BastionSession -History -SessionId $EndedId @Aws | Out-String -Width 300
        $text | Should -Match 'StartTime\s+Duration\s+Status\s+Target\s+Owner\s+DocumentName\s+Reason\s+SessionId'
        $text | Should -Match ([regex]::Escape('user/sandbox-user'))
        $text | Should -Match 'OPS-42 schema check'
        $text | Should -Match '\d\.\d\d:\d\d:\d\d'
        Get-BastionSession -History -Active @Aws | Out-String | Should -Match 'active'
    }

    It 'completes -Status' {
        $line = 'Get-BastionSession -History -Status Te'
        (TabExpansion2 -inputScript $line -cursorColumn $line.Length).CompletionMatches.CompletionText | Should -Be @('Terminated', 'Terminating')
    }

    It 'still lists only this PowerShell session''s tunnels without -History, with no AWS call' {
        @(Get-BastionSession).SessionId | Should -Be @($Live.SessionId)
        (Get-BastionSession)[0] | Should -BeOfType BastionTools.BastionSession
    }
}
