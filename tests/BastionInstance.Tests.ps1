#Requires -Version 7.0
BeforeAll {
    Import-Module (Join-Path $PSScriptRoot 'TestHelpers.psm1') -Force
    Import-Module (Get-TestModulePath) -Force
    $script:Sandbox = Start-TestSandbox -World @{
        instances = @(
            @{ instanceId = 'i-0aaaaaaaaaaaa0001'; name = 'bastion'; tags = @{ 'bastiontools:role' = 'bastion'; Environment = 'prod' }; agentVersion = '3.3.2299.0'; privateIpAddress = '10.0.1.10' }
            @{ instanceId = 'i-0aaaaaaaaaaaa0002'; name = 'bastion-legacy'; tags = @{ 'bastiontools:role' = 'bastion'; Environment = 'test' }; agentVersion = '3.0.190.0' }
            @{ instanceId = 'i-0aaaaaaaaaaaa0003'; name = 'web-1'; tags = @{ Environment = 'prod' }; pingStatus = 'ConnectionLost' }
        )
    }
    $script:Aws = $Sandbox.Aws
}

AfterAll { Stop-TestSandbox $Sandbox }

Describe 'Get-BastionInstance' {
    It 'lists the instances tagged as bastions by default, joined with their agent status' {
        $found = @(Get-BastionInstance @Aws)
        $found.InstanceId | Should -Be @('i-0aaaaaaaaaaaa0001', 'i-0aaaaaaaaaaaa0002')
        $found[0] | Should -BeOfType ([BastionTools.BastionInstance])
        $found[0].PSObject.TypeNames[0] | Should -Be 'BastionTools.BastionInstance'
        $found[0].PingStatus | Should -Be 'Online'
        $found[0].AgentVersion | Should -Be '3.3.2299.0'
        $found[1].AgentVersion | Should -Be '3.0.190.0'
        $found[0].PrivateIpAddress | Should -Be '10.0.1.10'
        $found[0].Tags['Environment'] | Should -Be 'prod'
    }

    It 'finds by Name tag, by tags and by id, and -All lists everything' {
        (Get-BastionInstance -Name web-1 @Aws).InstanceId | Should -Be 'i-0aaaaaaaaaaaa0003'
        (Get-BastionInstance -Name web-1 @Aws).PingStatus | Should -Be 'ConnectionLost'
        @(Get-BastionInstance -Tag @{ Environment = 'prod' } @Aws).InstanceId | Should -Be @('i-0aaaaaaaaaaaa0001', 'i-0aaaaaaaaaaaa0003')
        (Get-BastionInstance -InstanceId i-0aaaaaaaaaaaa0002 @Aws).Name | Should -Be 'bastion-legacy'
        @(Get-BastionInstance -All @Aws).Count | Should -Be 3
    }

    It 'takes instance ids from the pipeline' {
        @('i-0aaaaaaaaaaaa0001', 'i-0aaaaaaaaaaaa0003' | Get-BastionInstance @Aws).Name | Should -Be @('bastion', 'web-1')
    }

    It 'returns nothing, without error, when nothing matches' {
        Get-BastionInstance -Name nothing-like-this @Aws -ErrorVariable errs | Should -BeNullOrEmpty
        $errs | Should -BeNullOrEmpty
    }

    It 'reports refused credentials as AwsAuthenticationFailed, without the secret' {
        $bad = $Aws.Clone(); $bad.SecretKey = 'wrong-secret-value-123'
        $err = $null
        try { Get-BastionInstance -All @bad -ErrorAction Stop } catch { $err = $_ }
        $err | Should -Not -BeNullOrEmpty
        $err.FullyQualifiedErrorId | Should -BeLike 'AwsAuthenticationFailed,*'
        $err.CategoryInfo.Category | Should -Be 'AuthenticationError'
        "$err" | Should -Not -Match 'wrong-secret-value-123'
    }

    It 'stops with AwsRegionNotFound when no region is configured anywhere' {
        $noRegion = $Aws.Clone(); $noRegion.Remove('Region')
        $saved = $env:AWS_REGION, $env:AWS_DEFAULT_REGION, $env:HOME
        $env:AWS_REGION = $null; $env:AWS_DEFAULT_REGION = $null; $env:HOME = [IO.Path]::GetTempPath()
        try {
            { Get-BastionInstance -All @noRegion -ErrorAction Stop } | Should -Throw -ErrorId 'AwsRegionNotFound,BastionTools.Commands.GetBastionInstanceCommand'
        }
        finally { $env:AWS_REGION, $env:AWS_DEFAULT_REGION, $env:HOME = $saved }
    }
}

Describe 'A bastion named by -Name or -Tag that matches several instances' {
    BeforeAll {
        # The real bastion is stopped; someone launched an SSM-managed instance with the same Name tag.
        $script:Twins = Start-TestSandbox -World @{
            instances = @(
                @{ instanceId = 'i-0bbbbbbbbbbbb0001'; name = 'prod-bastion'; tags = @{ Environment = 'prod'; Team = 'data' }; state = 'stopped'; pingStatus = 'ConnectionLost' }
                @{ instanceId = 'i-0bbbbbbbbbbbb0002'; name = 'prod-bastion'; tags = @{ Environment = 'prod' } }
            )
        }
        $script:TwinAws = $Twins.Aws
    }

    AfterAll { Stop-TestSandbox $Twins }

    It 'is BastionTargetAmbiguous listing every match, even when only one of them is online, and starts no session' {
        $err = $null
        try { Start-BastionSession -Name prod-bastion -RemoteHost db.example.internal -RemotePort 5432 @TwinAws -ErrorAction Stop 6>$null } catch { $err = $_ }
        $err | Should -Not -BeNullOrEmpty
        $err.FullyQualifiedErrorId | Should -BeLike 'BastionTargetAmbiguous,*'
        $err.CategoryInfo.Category | Should -Be 'InvalidArgument'
        "$err" | Should -Match 'i-0bbbbbbbbbbbb0001 \(prod-bastion, stopped, ConnectionLost\)'
        "$err" | Should -Match 'i-0bbbbbbbbbbbb0002 \(prod-bastion, running, Online\)'
        $err.ErrorDetails.RecommendedAction | Should -Match '-Target'
        @(Get-BastionSession) | Should -BeNullOrEmpty
        { Start-BastionSession -Tag @{ Environment = 'prod' } -RemoteHost db.example.internal -RemotePort 5432 @TwinAws -ErrorAction Stop 6>$null } |
            Should -Throw -ErrorId 'BastionTargetAmbiguous,*'
    }

    It 'resolves once narrowed, by a more specific -Tag' {
        # Only the stopped real bastion carries Team=data: narrowed to it, the error is that it is offline, not ambiguity.
        { Start-BastionSession -Tag @{ Environment = 'prod'; Team = 'data' } -RemoteHost db.example.internal -RemotePort 5432 @TwinAws -ErrorAction Stop 6>$null } |
            Should -Throw -ErrorId 'BastionTargetOffline,*'
    }
}
